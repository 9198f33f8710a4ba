CREATE TABLE `channel_state` (
	`org_id` text NOT NULL,
	`channel` text NOT NULL,
	`key` text NOT NULL,
	`seq` integer NOT NULL,
	PRIMARY KEY(`org_id`, `channel`, `key`)
);
--> statement-breakpoint
CREATE INDEX `channel_state_seq` ON `channel_state` (`seq`);--> statement-breakpoint
ALTER TABLE `events` ADD `key` text;