"""What a device does: client algorithms, one device's training, evaluation, and batched
training of the devices that share a submodel."""
