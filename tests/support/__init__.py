"""Helpers the tests share (not tests themselves): table builders, fsck, a Mender Server, fixtures."""
