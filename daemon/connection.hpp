#pragma once
// One inbound TCP connection on a shard loop: turns libuv reads, writes, timers and
// thread-pool completions into the handful of events the SMTP session understands, and
// writes what the session produced once per read batch (RFC 2920 §3.2).
//
// A Connection is heap-allocated, never moved, and deleted only when its handle's close
// callback has run and no thread-pool work still refers to it (libuv's rule).

#include <uv.h>

#include <memory>
#include <optional>
#include <string>

#include "common/log.hpp"
#include "daemon/proxy/proxy_header.hpp"
#include "daemon/session.hpp"
#include "daemon/smtp_client.hpp"
#include "daemon/tls.hpp"

namespace sluice {

class Shard;

class Connection final : public smtp::SessionHooks {
  public:
    // Accepts from `server` and starts the session, or refuses (limits) and closes.
    static void accept(Shard& shard, uv_stream_t* server, std::size_t listener_index);

    void tick(smtp::Clock::time_point now);
    void shutdown();
    void force_close();

    std::size_t slot = 0;  // position in the shard's connection list

    // SessionHooks
    void commit(std::unique_ptr<storage::Message> msg) override;
    bool transport_available(const Transport& t) const override;
    void authenticate(const sasl::Credentials& creds) override;
    bool sender_allowed(std::string_view user, std::string_view sender) const override;
    storage::CommitStatus admission() const override;

  private:
    explicit Connection(Shard& shard);
    ~Connection() override;

    static void on_alloc(uv_handle_t* h, std::size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_close(uv_handle_t* h);

    // Pre-session phase of a proxy_protocol listener: the balancer's header, then begin().
    void read_proxy_header(std::string_view bytes);
    void refuse_proxy(std::string_view result, std::string_view error, Level level);
    // Limits (on the client's address), then the session; `early` are client bytes that
    // came with the PROXY header.
    void begin(std::string_view early, const proxy::Header* header);
    void receive(std::string_view bytes);  // peer bytes for the session (through TLS if on)
    void flush();
    void stage_output();  // session replies -> (TLS) -> sendbuf_
    void start_tls();     // after the 220 to STARTTLS, or at accept for implicit TLS
    bool receive_tls(std::string_view cipher, std::string& plain);  // false: close
    void update_reading();
    void sync_expectation(bool force_off = false);  // storage::Spool::expect
    void close_handle();
    void release();  // drops one reference; deletes at zero
    void commit_finished(storage::CommitStatus status);
    // In-line mode, the next hop took none of the recipients: the client gets its refusal.
    void refuse_inline(const storage::Message& msg,
                       const std::vector<smtp::RecipientResult>& results);
    void spool_and_forward(std::unique_ptr<storage::Message> msg);

    Shard& shard_;
    uv_tcp_t tcp_{};
    uv_write_t write_req_{};
    std::string writing_;                  // bytes owned by the write in flight
    std::string sendbuf_;                  // bytes for the socket not yet handed to a write
    std::unique_ptr<tls::TlsStream> tls_;  // only once the session starts TLS (~37 KB)
    std::shared_ptr<const tls::TlsServerConfig> tls_config_;
    bool tls_implicit_ = false;
    smtp::Clock::time_point accepted_at_ = smtp::Clock::now();
    bool session_started_ = false;
    std::string auth_user_;  // the user being authenticated
    bool write_in_flight_ = false;
    bool reading_ = false;
    bool closing_ = false;
    bool limiter_held_ = false;
    bool expecting_ = false;  // counted in the spool's expected commits
    int refs_ = 1;            // the handle; +1 per thread-pool job
    // The client: on a proxy_protocol listener, the PROXY header's source.
    IpAddr peer_;
    std::uint16_t port_ = 0;
    std::size_t listener_index_ = 0;
    std::shared_ptr<const Snapshot> snapshot_;  // the generation the connection came in on
    // proxy_protocol listeners: the header as it arrives (null once the session began), and
    // the balancer's own address.
    std::unique_ptr<proxy::Reader> proxy_reader_;
    std::optional<IpAddr> proxy_;
    std::unique_ptr<smtp::Session> session_;

    friend class Shard;
};

}  // namespace sluice
