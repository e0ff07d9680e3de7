"""proto ⇄ domain codecs: one module per API (``v1`` for workspace.v1, ``node`` for
workspace.node.v1). They are the only place that converts between generated messages and
the domain's frozen dataclasses; servicers, the client and the agent's link call them."""
