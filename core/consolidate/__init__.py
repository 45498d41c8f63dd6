"""consolidate: deduplicate, supersede, link, summarise and tier memories."""
