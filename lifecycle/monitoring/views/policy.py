"""policy pages."""
urlpatterns = []
