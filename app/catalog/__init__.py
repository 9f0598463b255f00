"""What the gateway can serve: the public models and their upstream targets, from the models file.
Imports nothing else of the gateway."""
