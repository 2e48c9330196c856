"""The guard service: serve a registry version behind request/response checks, monitoring and playbooks."""
