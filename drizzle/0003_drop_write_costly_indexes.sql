DROP INDEX `channel_state_seq`;--> statement-breakpoint
DROP INDEX `events_timestamp`;