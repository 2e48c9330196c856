"""HTTP pieces the registry API (:mod:`mlwarden.api`) and the guard (:mod:`mlwarden.serve`) share.

Error bodies and their handlers (``errors``), request-size limits (``limits``), bearer-token parsing (``auth``) and
the OpenAPI description of error responses (``responses``): one implementation, so both services answer errors,
oversized bodies and bad tokens the same way, and neither service imports the other.
"""
