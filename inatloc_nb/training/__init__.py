"""What defines a run, the models and WSOL methods, the data pipeline, the fastai learner, CAM
extraction and epoch selection."""
