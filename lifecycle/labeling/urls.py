from django.urls import path

from lifecycle.labeling import views

app_name = "labeling"

urlpatterns = [
    path("labeling/", views.project_list, name="list"),
    path("labeling/new", views.project_create, name="create"),
    path("labeling/<int:project_id>/", views.project_detail, name="detail"),
    path("labeling/<int:project_id>/review", views.review, name="review"),
    path("labeling/<int:project_id>/next", views.next_item, name="next"),
    path("labeling/<int:project_id>/answer", views.answer, name="answer"),
    path("labeling/<int:project_id>/skip", views.skip, name="skip"),
    path("labeling/<int:project_id>/undo", views.undo, name="undo"),
    path("labeling/<int:project_id>/table", views.table, name="table"),
    path("labeling/<int:project_id>/adjudication", views.adjudication, name="adjudication"),
    path("labeling/<int:project_id>/items/<int:item_id>/decide", views.decide, name="decide"),
    path("labeling/<int:project_id>/qc", views.qc_page, name="qc"),
    path("labeling/<int:project_id>/qc/run", views.qc_run, name="qc_run"),
    path("labeling/<int:project_id>/suggest", views.suggest, name="suggest"),
    path("labeling/<int:project_id>/freeze", views.freeze, name="freeze"),
]
