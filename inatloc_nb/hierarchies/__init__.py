"""Label hierarchies: trees, levels, mixed labellings and the shipped taxonomies."""
