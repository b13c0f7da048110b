from django.urls import path

from lifecycle.datasets import views

app_name = "datasets"

urlpatterns = [
    path("datasets/", views.dataset_list, name="list"),
    path("datasets/new", views.dataset_create, name="create"),
    path("datasets/uploads/<int:upload_id>/", views.upload_detail, name="upload"),
    path("datasets/<slug:slug>/", views.dataset_detail, name="detail"),
    path("datasets/<slug:slug>/policy", views.dataset_policy, name="policy"),
    path("datasets/<slug:slug>/upload", views.upload_create, name="upload_create"),
    path("datasets/<slug:slug>/diff", views.version_diff, name="diff"),
    path("datasets/<slug:slug>/v<int:number>/", views.version_detail, name="version"),
    path("datasets/<slug:slug>/v<int:number>/export.csv", views.version_export, name="export"),
    path("datasets/<slug:slug>/v<int:number>/signoff", views.version_signoff, name="signoff"),
    path("datasets/<slug:slug>/v<int:number>/<str:operation>", views.version_action, name="action"),
    path("api/v1/datasets", views.api_datasets, name="api_datasets"),
    path("api/v1/datasets/<slug:slug>/versions", views.api_version_create, name="api_version_create"),
    path("api/v1/datasets/<slug:slug>/versions/<int:number>", views.api_version_detail, name="api_version"),
    path("api/v1/uploads/<int:upload_id>", views.api_upload_detail, name="api_upload"),
]
