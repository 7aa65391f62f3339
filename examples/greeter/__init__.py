"""The greeter example: a service, a mesh client of it, an outside client, a debugging aid."""
