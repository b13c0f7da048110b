from django.urls import path

from lifecycle.registry import api, views

app_name = "registry"

urlpatterns = [
    # Pages (views.py)
    path("registry/", views.model_list, name="list"),
    path("registry/new", views.model_create, name="create"),
    path("registry/register", views.register, name="register"),  # ?run=<id>: a run's output as a version
    path("registry/inbox", views.inbox, name="inbox"),
    path("registry/requests/<int:request_id>/", views.request_detail, name="request"),
    path("registry/requests/<int:request_id>/approve", views.request_approve, name="approve"),
    path("registry/requests/<int:request_id>/reject", views.request_reject, name="reject"),
    path("registry/models/<slug:slug>/", views.model_detail, name="model"),
    path("registry/models/<slug:slug>/settings", views.model_settings, name="settings"),
    path("registry/models/<slug:slug>/versions/<int:number>/", views.version_detail, name="version"),
    path("registry/models/<slug:slug>/versions/<int:number>/card", views.card_edit, name="card"),
    path("registry/models/<slug:slug>/versions/<int:number>/promote", views.promote, name="promote"),
    path("registry/models/<slug:slug>/versions/<int:number>/verify", views.verify, name="verify"),
    path("registry/models/<slug:slug>/versions/<int:number>/export", views.export_html, name="export_html"),
    path("registry/models/<slug:slug>/versions/<int:number>/export.json", views.export_json, name="export_json"),
    # Webhooks (views.py, the webhooks section)
    path("registry/webhooks/", views.webhook_list, name="webhooks"),
    path("registry/webhooks/new", views.webhook_create, name="webhook_create"),
    path("registry/webhooks/<int:webhook_id>/", views.webhook_detail, name="webhook"),
    path("registry/webhooks/<int:webhook_id>/disable", views.webhook_disable, name="webhook_disable"),
    # JSON API (api.py)
    path("api/v1/registry/models", api.models_, name="api_models"),
    path("api/v1/registry/models/<slug:slug>", api.model, name="api_model"),
    path("api/v1/registry/models/<slug:slug>/versions", api.versions, name="api_versions"),
    path("api/v1/registry/models/<slug:slug>/versions/<int:number>", api.version, name="api_version"),
    path("api/v1/registry/models/<slug:slug>/versions/<int:number>/requests", api.request_create, name="api_request_create"),
    path("api/v1/registry/models/<slug:slug>/versions/<int:number>/export", api.export, name="api_export"),
    path("api/v1/registry/requests/<int:request_id>", api.request_detail, name="api_request"),
    path("api/v1/registry/requests/<int:request_id>/approve", api.request_approve, name="api_approve"),
    path("api/v1/registry/requests/<int:request_id>/reject", api.request_reject, name="api_reject"),
]
