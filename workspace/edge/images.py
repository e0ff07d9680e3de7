"""The Images API: decode, call the catalog (ops/images.py), encode."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from workspace.codec import v1
from workspace.edge.calls import abort, caller, unary
from workspace.ops.images import Catalog
from workspace.store.blobs import BlobRepository
from workspace.v1 import images_pb2, images_pb2_grpc


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.default_owner = catalog.env.cfg.default_owner

    @property
    def blobs(self) -> BlobRepository:
        return self.catalog.blobs

    def _owner(self, context: grpc.ServicerContext) -> str:
        return caller(context, self.default_owner)

    # -- messages in, messages out ---------------------------------------------------------

    def upload_blob(self, chunks: Iterable[bytes]) -> images_pb2.BlobRef:
        digest, size = self.catalog.upload_blob(chunks)
        return images_pb2.BlobRef(digest=digest, size_bytes=size)

    def import_image(self, owner: str, req: images_pb2.ImportImageRequest) -> images_pb2.Image:
        view = self.catalog.import_image(owner, v1.image_request_from_proto(req))
        return v1.image_to_proto(view)

    def delete_image(self, owner: str, name: str) -> images_pb2.Image:
        return v1.image_to_proto(self.catalog.delete_image(owner, name))

    # -- RPCs ------------------------------------------------------------------------------

    def UploadBlob(
        self, request_iterator: Iterator[images_pb2.BlobChunk], context: grpc.ServicerContext
    ) -> images_pb2.BlobRef:
        try:
            return self.upload_blob(c.data for c in request_iterator)
        except Exception as exc:
            abort(context, exc, "UploadBlob")
            raise

    @unary
    def ImportImage(
        self, request: images_pb2.ImportImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        return self.import_image(self._owner(context), request)

    @unary
    def ListImages(
        self, request: images_pb2.ListImagesRequest, context: grpc.ServicerContext
    ) -> images_pb2.ListImagesResponse:
        images = [v1.image_to_proto(i) for i in self.catalog.list_images()]
        return images_pb2.ListImagesResponse(images=images)

    @unary
    def GetImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        return v1.image_to_proto(self.catalog.get_image(request.name))

    @unary
    def HasBlobs(
        self, request: images_pb2.HasBlobsRequest, context: grpc.ServicerContext
    ) -> images_pb2.HasBlobsResponse:
        return images_pb2.HasBlobsResponse(missing=self.catalog.has_blobs(request.digests))

    @unary
    def DeleteImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> images_pb2.Image:
        return self.delete_image(self._owner(context), request.name)

    @unary
    def GetRepositoryUsage(
        self, request: images_pb2.RepositoryUsageRequest, context: grpc.ServicerContext
    ) -> images_pb2.RepositoryUsage:
        return v1.usage_to_proto(self.catalog.repository_usage(self._owner(context)))
