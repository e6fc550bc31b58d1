"""Tasks for the shared training loop (bertcli.train): pretraining and the fine-tuning tasks."""
