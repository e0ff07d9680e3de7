"""The Images API: decode, call the catalog (ops/images.py), encode."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import grpc

from workspace.codec import v1
from workspace.edge import auth
from workspace.edge.calls import each_request, unary
from workspace.identity import Identity
from workspace.ops import save
from workspace.ops.images import Catalog
from workspace.ops.taskhub import TaskHub
from workspace.store.blobs import BlobRepository
from workspace.v1 import images_pb2, images_pb2_grpc


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    SERVICE = "workspace.v1.Images"

    def __init__(self, catalog: Catalog, hub: TaskHub | None = None) -> None:
        self.catalog = catalog
        # The agents' task streams (a save is done by the workspace's node).
        self.hub = hub if hub is not None else TaskHub()
        self.auth = auth.for_config(catalog.env.cfg)

    @property
    def blobs(self) -> BlobRepository:
        return self.catalog.blobs

    # -- messages in, messages out ---------------------------------------------------------

    def upload_blob(
        self, chunks: Iterable[bytes], who: Identity | str, expected: str = "", said_bytes: int = 0
    ) -> images_pb2.BlobRef:
        """Store the bytes; ``expected``: the digest they must have ("": any), ``said_bytes``:
        their count (0: any)."""
        digest, size = self.catalog.upload_blob(
            chunks, who, expected=expected, said_bytes=said_bytes
        )
        return images_pb2.BlobRef(digest=digest, size_bytes=size)

    def import_image(
        self, who: Identity | str, req: images_pb2.ImportImageRequest
    ) -> images_pb2.Image:
        if req.check_only:  # nothing imported: an empty image of that name
            self.catalog.check_import(who, req.name, req.project)
            return images_pb2.Image(name=req.name)
        view = self.catalog.import_image(
            who, v1.image_request_from_proto(req), req.project, req.context, req.login_user
        )
        return v1.image_to_proto(view)

    def delete_image(self, who: Identity | str, name: str) -> images_pb2.Image:
        return v1.image_to_proto(self.catalog.delete_image(who, name))

    # -- RPCs ------------------------------------------------------------------------------

    @unary
    def UploadBlob(
        self,
        request_iterator: Iterator[images_pb2.BlobChunk],
        context: grpc.ServicerContext,
        who: Identity,
    ) -> images_pb2.BlobRef:
        chunks = each_request(request_iterator, context, "UploadBlob: the next chunk")
        first = next(chunks, None)  # it may say the digest and size of the whole
        data = itertools.chain([first.data] if first else [], (c.data for c in chunks))
        if first is None:
            return self.upload_blob(data, who)
        return self.upload_blob(data, who, first.digest, first.size_bytes)

    @unary
    def ImportImage(
        self, request: images_pb2.ImportImageRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.Image:
        return self.import_image(who, request)

    @unary
    def ListImages(
        self, request: images_pb2.ListImagesRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.ListImagesResponse:
        views, token = self.catalog.list_images(who, request.page_size, request.page_token)
        images = [v1.image_to_proto(i) for i in views]
        return images_pb2.ListImagesResponse(images=images, next_page_token=token)

    @unary
    def GetImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.Image:
        return v1.image_to_proto(self.catalog.get_image(who, request.name))

    @unary
    def HasBlobs(
        self, request: images_pb2.HasBlobsRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.HasBlobsResponse:
        return images_pb2.HasBlobsResponse(missing=self.catalog.has_blobs(who, request.digests))

    @unary
    def DeleteImage(
        self, request: images_pb2.GetImageRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.Image:
        return self.delete_image(who, request.name)

    @unary
    def GetRepositoryUsage(
        self,
        request: images_pb2.RepositoryUsageRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> images_pb2.RepositoryUsage:
        return v1.usage_to_proto(self.catalog.repository_usage(who))

    @unary
    def SetImagePublic(
        self,
        request: images_pb2.SetImagePublicRequest,
        context: grpc.ServicerContext,
        who: Identity,
    ) -> images_pb2.Image:
        return v1.image_to_proto(self.catalog.set_public(request.name, request.public))

    @unary
    def SaveImage(
        self, request: images_pb2.SaveImageRequest, context: grpc.ServicerContext, who: Identity
    ) -> images_pb2.Image:
        view = save.save(
            self.catalog.env,
            self.hub,
            self.catalog,
            who,
            request.workspace,
            request.image,
            request.project,
        )
        return v1.image_to_proto(view)
