from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequiredMiddleware
from django.http import Http404, JsonResponse

from lifecycle.core.models import ApiToken
from lifecycle.core.views import page_not_found


def is_api(request):
    return request.path.startswith("/api/")


class ApiTokenMiddleware:
    """`Authorization: Bearer lc_…` authenticates /api/ requests.

    A bearer token is not sent by browsers on their own, so a request carrying a valid
    one cannot be cross-site forged: CSRF checks are waived for it (and only for it).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        header = request.headers.get("Authorization", "")
        if is_api(request) and header.startswith("Bearer "):
            user = ApiToken.authenticate(header.removeprefix("Bearer ").strip())
            if user is None:
                return JsonResponse({"error": "unauthorized", "detail": "invalid or revoked API token"}, status=401)
            request.user = user
            request._dont_enforce_csrf_checks = True
        return self.get_response(request)


class LoginRequiredMiddleware(DjangoLoginRequiredMiddleware):
    """Every view needs a logged-in user unless marked @login_not_required.

    Pages redirect to the login page; the JSON API answers 401 instead of a redirect.
    """

    def handle_no_permission(self, request, view_func):
        if is_api(request):
            return JsonResponse({"error": "unauthorized", "detail": "log in or send an API token"}, status=401)
        return super().handle_no_permission(request, view_func)


def csp_header(policy):
    return "; ".join(" ".join([directive, *sources]) for directive, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    """Sends settings.SECURE_CSP as the Content-Security-Policy header of every response.

    The setting has the shape of Django 6.0's own SECURE_CSP ({directive: [sources]}), so the
    move to django.middleware.csp is a change of this one MIDDLEWARE line.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        header = csp_header(settings.SECURE_CSP)
        # Django's debug error page (DEBUG only) is built from inline CSS and scripts; its 404
        # page never shows (NotFoundPageMiddleware answers with ours).
        debug_page = settings.DEBUG and response.status_code == 500
        if header and not debug_page:
            response.headers.setdefault("Content-Security-Policy", header)
        return response


class NotFoundPageMiddleware:
    """With DEBUG on, every 404 still gets our page. Django then answers one with its technical
    page instead of handler404, listing every URL pattern, and the demo runs with DEBUG on.

    Inside CommonMiddleware, so that a missing trailing slash is still redirected.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # No resolver match: no route took the path (a view's own 404 comes through process_exception).
        if settings.DEBUG and response.status_code == 404 and request.resolver_match is None:
            return page_not_found(request)
        return response

    def process_exception(self, request, exception):
        if settings.DEBUG and isinstance(exception, Http404):
            return page_not_found(request, exception)
        return None
