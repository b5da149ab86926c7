"""The paper's tables and figures, the HTML report, the chart renderer and the widget explorers."""
