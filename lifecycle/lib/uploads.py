"""Refuse an upload over the size limit while it streams in, not after it has landed."""
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


class SizeLimitUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: counts bytes and stops the upload at the limit.

    The view sees `request.upload_refused` (a message) and answers 413; nothing past the
    limit is read, stored or parsed.
    """

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.limit = settings.DATASET_MAX_UPLOAD_BYTES
        self.received = 0
        # Not refused here on Content-Length alone: the form fields before the file (the CSRF
        # token among them) must still be parsed, so the refusal can be a clear 413.

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self._refuse()
        return raw_data

    def file_complete(self, file_size):
        return None

    def _refuse(self):
        megabytes = self.limit / (1024 * 1024)
        self.request.upload_refused = f"The file is larger than the limit of {megabytes:,.0f} MB."
        raise StopUpload(connection_reset=True)
