"""The service's own pages: the classifier web page (/ui), the offline API docs (/docs) and its OpenAPI document.

Plain HTML/JS/CSS in ``static/``: no build step, nothing fetched from another host, so the pages work offline
and in air-gapped clusters. ``pages.py`` holds the routes the service mounts.
"""
