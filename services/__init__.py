"""Services: small gRPC daemons (auth, catalog, billing, recommendations, playback), a gateway."""
