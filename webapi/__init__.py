"""HTTP plumbing both chargewatch services share: auth, request bodies, errors, metrics, health,
OpenAPI. Flask lives here and in the service packages, never in the ``chargewatch`` core."""
