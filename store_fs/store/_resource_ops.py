"""Resources (versioned, content-addressed ``NamedResources``) of a :class:`~store_fs.store.FileStore`."""

from __future__ import annotations

from store_fs._disk.ids import check_name_id
from store_fs._filtering import build_filter, check_page_args, matches, paginate, sort_items
from store_fs.errors import InvalidIdError
from store_fs.models import NamedResources, PaginatedResult, ResourcesUpdate, SortOrder
from store_fs.store._base import StoreCore


class ResourceMethods(StoreCore):
    """Publishing and reading resources, kept by :class:`~store_fs._disk.resource_versions.ResourceStore`."""

    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        return self._resources.put(None, resources)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        self._healthcheck()
        return self._resources.put(resources_id, resources)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        # An id no resources can have answers None, not InvalidIdError: a rollout may name
        # any resources_id (it is not checked), and upstream's runner fetches it outside any
        # try, so a raise ended its loop while upstream's stores answer None.
        try:
            check_name_id("resources", resources_id)
        except InvalidIdError:
            return None
        return self._resources.get(resources_id)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return self._resources.latest()

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        check_page_args(limit, offset)
        filters = build_filter(
            "and",
            resources_id=("exact", resources_id) if resources_id is not None else None,
            resources_id__c=("contains", resources_id_contains)
            if resources_id_contains is not None
            else None,
        )
        selected = [r for r in self._resources.all() if matches(r, filters)]
        ordered = sort_items(selected, sort_by, sort_order, ResourcesUpdate)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )
