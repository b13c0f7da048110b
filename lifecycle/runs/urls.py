from django.urls import path

from lifecycle.runs import views

app_name = "runs"

urlpatterns = [
    path("runs/", views.run_list, name="list"),
    path("runs/new", views.run_create, name="create"),
    path("runs/compare", views.run_compare, name="compare"),
    path("runs/<int:run_id>/", views.run_detail, name="detail"),
    path("runs/<int:run_id>/live", views.run_live, name="live"),
    path("runs/<int:run_id>/debug", views.run_debug, name="debug"),
    path("runs/<int:run_id>/cancel", views.run_cancel, name="cancel"),
    path("runs/<int:run_id>/resume", views.run_resume, name="resume"),
    path("api/v1/runs", views.api_create, name="api_create"),
    path("api/v1/runs/<int:run_id>", views.api_detail, name="api_detail"),
    path("api/v1/runs/<int:run_id>/metrics", views.api_metrics, name="api_metrics"),
]
