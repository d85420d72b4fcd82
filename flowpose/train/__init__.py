"""Training of the flow pose prior (`trainer.train_and_evaluate`)."""
