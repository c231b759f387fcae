"""gRPC transport: the service, mTLS credentials, and chunked streaming of opaque payloads."""
