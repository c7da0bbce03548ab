"""llm.proto and its generated gRPC stubs (regenerate: `python -m serve_app.proto.generate`)."""
