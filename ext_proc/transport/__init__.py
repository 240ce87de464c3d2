"""The HTTP/2 gRPC transport the ext_proc server runs on."""
