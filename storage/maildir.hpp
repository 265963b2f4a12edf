#pragma once
// The `maildir:PATH` transport (docs/config.md, [routes]): each message becomes one file in
// a Maildir
// (tmp/ -> fsync -> rename into new/ -> fsync of new/), so a file in new/ is always
// complete and durable. Blocking: call it from a worker thread, never from a shard loop.
//
// Trust: the path comes from the operator's config; the content from the network, but it
// is only written, never interpreted.

#include <string>

#include "storage/message.hpp"

namespace sluice::storage {

// Creates PATH/{tmp,new,cur} if needed. Returns an empty string or an error message.
std::string ensure_maildir(const std::string& path);

// Writes `msg` once into the maildir at `path` for the recipients routed there. The file
// starts with Return-Path: and one Delivered-To: per recipient (RFC 5321 §4.4 trace
// fields), then the message data. The file's data is fdatasync'd and renamed into new/;
// the rename itself is durable only after sync_maildir(path), which a batch calls once
// for all the files it wrote there.
CommitStatus write_maildir(const std::string& path, const Message& msg,
                           const std::vector<const Recipient*>& rcpts, std::string& error);

// fsyncs PATH/new so every rename into it so far is durable.
CommitStatus sync_maildir(const std::string& path, std::string& error);

}  // namespace sluice::storage
