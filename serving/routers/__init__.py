"""The service's endpoints, one ``APIRouter`` module per area, included by ``serving.app``.

* ``recommend`` — ``GET /recommend/{user_id}``, ``POST /recommend``
* ``feed`` — ``/feed``, ``/interact`` and the feed page at ``/``
* ``catalogue`` — ``/items…``, ``/search``, ``/users…``, ``/categories``
* ``admin`` — ``/health``, ``/metrics``, ``/admin/reload``
* ``docs`` — ``/docs`` and ``/redoc``, from locally installed assets

``shared`` holds the cascade plumbing the first three use, ``params`` the parameter
declarations whose bounds come from settings.
"""
