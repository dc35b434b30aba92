"""CDS Hooks 2.0 service: discovery, hooks, feedback, JWT auth, cards."""
