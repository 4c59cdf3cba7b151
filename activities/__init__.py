"""Every side effect a workflow needs, as classes with injected dependencies."""
