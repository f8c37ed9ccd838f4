"""The HTTP gateway: FastAPI ingress of the Serve app (sync generation, the queue, OpenAI API)."""
