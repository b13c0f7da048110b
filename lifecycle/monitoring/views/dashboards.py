"""dashboards pages."""
urlpatterns = []
