"""alerts pages."""
urlpatterns = []
