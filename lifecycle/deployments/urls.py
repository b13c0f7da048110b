from django.urls import path

from lifecycle.deployments import api, views

app_name = "deployments"

# The section's own pages have no trailing slash ("deployments/tokens"), a deployment's pages
# do ("deployments/<name>/"), so no deployment name can hide a page of the section.
urlpatterns = [
    # Pages (views.py)
    path("deployments/", views.deployment_list, name="list"),
    path("deployments/new", views.deployment_create, name="create"),
    path("deployments/tokens", views.tokens, name="tokens"),
    path("deployments/tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
    path("deployments/feedback", views.review, name="review"),
    path("deployments/feedback/give", views.review_give, name="review_give"),
    path("deployments/<slug:name>/", views.deployment_detail, name="detail"),
    path("deployments/<slug:name>/releases/new", views.release_start, name="release_start"),
    path("deployments/<slug:name>/releases/<int:number>/share", views.release_share, name="release_share"),
    path("deployments/<slug:name>/releases/<int:number>/promote", views.release_promote, name="release_promote"),
    path("deployments/<slug:name>/releases/<int:number>/rollback", views.release_rollback, name="release_rollback"),
    path("deployments/<slug:name>/releases/<int:number>/shadow", views.shadow, name="shadow"),
    path("deployments/<slug:name>/feedback/export", views.feedback_export_start, name="feedback_export"),
    # JSON API (api.py)
    path("api/v1/deployments", api.deployments, name="api_list"),
    path("api/v1/deployments/<slug:name>", api.deployment, name="api_deployment"),
    path("api/v1/deployments/<slug:name>/rollback", api.rollback_create, name="api_rollback_create"),
    path("api/v1/deployments/<slug:name>/rollbacks/<int:rollback_id>", api.rollback, name="api_rollback"),
    path("api/v1/deployments/<slug:name>/metrics", api.metrics, name="api_metrics"),
]
