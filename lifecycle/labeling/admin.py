from django.contrib import admin

from lifecycle.core.admin import ReadOnlyAdmin
from lifecycle.labeling.models import Decision, LabelingProject, QCReport

# Projects, answers and decisions change through their model methods, which keep consensus
# and the audit trail; the admin only shows them.


@admin.register(LabelingProject)
class LabelingProjectAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "version", "overlap", "status", "item_count", "created_at")
    list_filter = ("status",)
    list_select_related = ("version__dataset",)
    search_fields = ("name",)


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    list_display = ("item", "label", "reviewer", "created_at")
    list_select_related = ("item__project", "reviewer")


@admin.register(QCReport)
class QCReportAdmin(ReadOnlyAdmin):
    list_display = ("project", "started_at", "answers", "passes")
