"""Generated gRPC stubs and the .proto files they come from (`make proto`)."""
