"""The registry's JSON API (/api/v1/registry/...)."""
from django.http import JsonResponse

from lifecycle.core.roles import role_required


@role_required("ml_engineer")
def models_(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def model(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def versions(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def version(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def request_create(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def export(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def request_detail(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def request_approve(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)


@role_required("ml_engineer")
def request_reject(request, **kwargs):
    return JsonResponse({"error": "not built yet"}, status=501)

