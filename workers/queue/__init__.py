"""The Redis Streams side of the workers: consumer group, job scripts, consumer loop."""
