from django.contrib.auth import views as auth_views
from django.urls import path

from lifecycle.core import metrics, views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("audit/", views.audit_list, name="audit"),
    path("audit/export.<str:fmt>", views.audit_export, name="audit_export"),
    path("account/tokens/", views.token_list, name="tokens"),
    path("account/tokens/new", views.token_create, name="token_create"),
    path("account/tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
    # <path:...> on purpose: every value reaches the view, which refuses anything but a digest.
    path("artifacts/<path:sha256>", views.artifact_download, name="artifact_download"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/verify-audit", views.job_verify_audit, name="job_verify_audit"),
    path("jobs/<int:job_id>", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel", views.job_cancel, name="job_cancel"),
    path("api/v1/me", views.api_me, name="api_me"),
    path("api/v1/jobs/<int:job_id>", views.api_job, name="api_job"),
]
