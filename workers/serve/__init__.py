"""The Ray Serve application: LoRAModel, JobConsumer, and the app builder."""
