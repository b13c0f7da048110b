from django.contrib import admin
from django.urls import include, path


handler403 = "lifecycle.core.views.permission_denied"
handler404 = "lifecycle.core.views.page_not_found"

urlpatterns = [
    path("", include("lifecycle.core.urls")),
    path("", include("lifecycle.datasets.urls")),
    path("", include("lifecycle.runs.urls")),
    path("", include("lifecycle.labeling.urls")),
    path("", include("lifecycle.registry.urls")),
    path("", include("lifecycle.deployments.urls")),
    path("", include("lifecycle.monitoring.urls")),
    path("admin/", admin.site.urls),
]
