from django.contrib import admin

from lifecycle.core.admin import ReadOnlyAdmin
from lifecycle.datasets.models import Dataset, DatasetVersion, Upload

# Versions are immutable (the database refuses UPDATE); datasets and uploads change through
# their model methods and the ingest pipeline, which write the audit trail. Shown only.


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ("slug", "name", "task", "pii_policy", "created_by", "created_at")
    list_filter = ("task", "pii_policy")
    search_fields = ("slug", "name")


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = ("dataset", "number", "operation", "row_count", "pii_status", "has_leakage", "created_at")
    list_filter = ("operation", "pii_status", "has_leakage")
    list_select_related = ("dataset",)

    def get_queryset(self, request):
        return super().get_queryset(request).for_listing()


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    list_display = ("id", "dataset", "filename", "size", "format", "job", "version", "created_at")
    list_select_related = ("dataset", "job", "version__dataset")
