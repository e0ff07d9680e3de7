"""The domain: frozen specs and state enums every part of the service and the agent
shares. Protobuf messages never appear here; the codecs at the edges convert."""
