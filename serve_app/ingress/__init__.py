"""The ingress: OpenAI HTTP routes, SSE, gRPC methods, auth, errors and text streaming."""
