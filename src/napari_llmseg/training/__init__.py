"""Training: llmseg-tiny from scratch (:mod:`.train`), adapting a model to a user's labels
(:mod:`.finetune`), and the real datasets both read from installed packages (:mod:`.data`)."""
