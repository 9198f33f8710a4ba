CREATE TABLE `event_channels` (
	`org_id` text NOT NULL,
	`channel` text NOT NULL,
	`seq` integer NOT NULL,
	PRIMARY KEY(`org_id`, `channel`, `seq`)
);
--> statement-breakpoint
CREATE TABLE `events` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`id` text NOT NULL,
	`org_id` text NOT NULL,
	`user_id` text NOT NULL,
	`type` text NOT NULL,
	`payload` text NOT NULL,
	`timestamp` integer NOT NULL,
	`received_at` integer NOT NULL,
	`channels` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `events_id_unique` ON `events` (`id`);--> statement-breakpoint
CREATE INDEX `events_timestamp` ON `events` (`timestamp`);--> statement-breakpoint
CREATE INDEX `events_org_seq` ON `events` (`org_id`,`seq`);--> statement-breakpoint
CREATE TABLE `meta` (
	`key` text PRIMARY KEY NOT NULL,
	`value` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `prune_marks` (
	`org_id` text NOT NULL,
	`channel` text NOT NULL,
	`pruned_seq` integer NOT NULL,
	PRIMARY KEY(`org_id`, `channel`)
);
