"""The service's edge: gRPC servicers that decode with the codecs (workspace/codec), call
an operation (workspace/ops) and encode the answer; errors map to statuses here."""
