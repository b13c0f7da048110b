"""drift pages."""
urlpatterns = []
