// A ROS 2 publisher on Fast DDS (eProsima Fast DDS 2.9, Debian's libfastrtps-dev: the
// middleware ROS 2 uses by default), with ROS 2's DDS type and topic names and its default
// QoS (reliable, volatile, keep last 10), in XCDR1 as ROS 2 writes it. The CDR of each type
// is written by hand below, not generated, so nothing of ours is in the loop.
//
//   fastpub --topic /chatter --type string|imu|navsatfix|pointcloud2 --count N
//           [--rate R] [--start S] [--size BYTES] [--depth D] [--linger SECONDS]
//           [--tail N]
//
// --tail N publishes N more messages at 5/s after the others: a subscriber that lost some
// of the last ones under load sees the gap they left (a loss is seen at the next sample).
//
// Message n is the same as rospub.py's `make(kind, n, size)`, bit for bit, so a test checks
// what the agent captured against rospub.py without a side channel.
//
// Built by scripts/setup: g++ -O2 -std=c++17 fastpub.cpp -lfastrtps -lfastcdr

#include <fastdds/dds/domain/DomainParticipant.hpp>
#include <fastdds/dds/domain/DomainParticipantFactory.hpp>
#include <fastdds/dds/publisher/DataWriter.hpp>
#include <fastdds/dds/publisher/Publisher.hpp>
#include <fastdds/dds/topic/Topic.hpp>
#include <fastdds/dds/topic/TopicDataType.hpp>
#include <fastdds/dds/topic/TypeSupport.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

using namespace eprosima::fastdds::dds;
using eprosima::fastrtps::rtps::InstanceHandle_t;
using eprosima::fastrtps::rtps::SerializedPayload_t;

namespace {

// Classic CDR, little endian, aligned from the start of the body (after the 4-byte
// encapsulation header), as ROS 2 and Fast DDS write it.
class Cdr {
public:
    std::vector<uint8_t> bytes{0x00, 0x01, 0x00, 0x00};  // CDR_LE, no options

    void align(size_t n) {
        while ((bytes.size() - 4) % n != 0) bytes.push_back(0);
    }
    template <typename T> void put(T value) {
        align(sizeof(T));
        uint8_t raw[sizeof(T)];
        std::memcpy(raw, &value, sizeof(T));
        bytes.insert(bytes.end(), raw, raw + sizeof(T));
    }
    void string(const std::string& s) {
        put<uint32_t>(static_cast<uint32_t>(s.size() + 1));
        bytes.insert(bytes.end(), s.begin(), s.end());
        bytes.push_back(0);
    }
};

void header(Cdr& c, int64_t n, const char* frame) {
    c.put<int32_t>(static_cast<int32_t>(1700000000 + n));
    c.put<uint32_t>(static_cast<uint32_t>((n * 7919) % 1000000000));
    c.string(frame);
}

// rospub.py's make(kind, n, size), serialized.
std::vector<uint8_t> make(const std::string& kind, int64_t n, size_t size) {
    Cdr c;
    if (kind == "string") {
        char text[32];
        std::snprintf(text, sizeof text, "n=%010lld ", static_cast<long long>(n));
        std::string s = text;
        if (size > s.size()) s.append(size - s.size(), 'x');
        c.string(s);
    } else if (kind == "imu") {
        double a = static_cast<double>(n) * 0.001;
        header(c, n, "imu_link");
        for (double v : {std::sin(a), 0.0, std::cos(a), 1.0}) c.put<double>(v);
        for (int i = 0; i < 9; i++) c.put<double>(0.01 * i);
        for (double v : {a, -a, 1700000000123456.25 + 0.5 * static_cast<double>(n)}) c.put<double>(v);
        for (int i = 0; i < 9; i++) c.put<double>(0.0);
        for (double v : {0.1, 9.81, static_cast<double>(-n) / 3.0}) c.put<double>(v);
        for (int i = 0; i < 9; i++) c.put<double>(1e-3);
    } else if (kind == "navsatfix") {
        header(c, n, "gps");
        c.put<int8_t>(static_cast<int8_t>(n % 3 - 1));
        c.put<uint16_t>(1);
        c.put<double>(48.1 + static_cast<double>(n) * 1e-6);
        c.put<double>(11.5 - static_cast<double>(n) * 1e-6);
        c.put<double>(520.25 + static_cast<double>(n));
        for (int i = 0; i < 9; i++) c.put<double>(static_cast<double>(i));
        c.put<uint8_t>(2);
    } else if (kind == "pointcloud2") {
        uint32_t points = size / 16 > 0 ? static_cast<uint32_t>(size / 16) : 1;
        header(c, n, "lidar");
        c.put<uint32_t>(1);
        c.put<uint32_t>(points);
        c.put<uint32_t>(4);
        const char* names[] = {"x", "y", "z", "i"};
        for (uint32_t i = 0; i < 4; i++) {
            c.string(names[i]);
            c.put<uint32_t>(4 * i);
            c.put<uint8_t>(7);
            c.put<uint32_t>(1);
        }
        c.put<uint8_t>(0);  // is_bigendian
        c.put<uint32_t>(16);
        c.put<uint32_t>(16 * points);
        // Sixteen bytes, repeated: made once, copied (a loop per byte would take a core at 100
        // clouds a second).
        uint8_t pattern[16];
        for (int i = 0; i < 16; i++) pattern[i] = static_cast<uint8_t>((n + i) % 256);
        c.put<uint32_t>(16 * points);
        c.bytes.reserve(c.bytes.size() + 16 * static_cast<size_t>(points) + 1);
        for (uint32_t p = 0; p < points; p++) c.bytes.insert(c.bytes.end(), pattern, pattern + 16);
        c.put<uint8_t>(1);  // is_dense
    } else {
        std::fprintf(stderr, "fastpub: unknown --type %s\n", kind.c_str());
        std::exit(2);
    }
    return c.bytes;
}

// A sample is its serialized bytes: the type only copies them into the payload.
struct Raw {
    std::vector<uint8_t> bytes;
};

class RawType : public TopicDataType {
public:
    RawType(const std::string& name, uint32_t max_size) {
        setName(name.c_str());
        m_typeSize = max_size;
        m_isGetKeyDefined = false;
    }
    bool serialize(void* data, SerializedPayload_t* payload) override {
        auto* raw = static_cast<Raw*>(data);
        if (raw->bytes.size() > payload->max_size) return false;
        std::memcpy(payload->data, raw->bytes.data(), raw->bytes.size());
        payload->length = static_cast<uint32_t>(raw->bytes.size());
        payload->encapsulation = CDR_LE;
        return true;
    }
    bool deserialize(SerializedPayload_t*, void*) override { return false; }
    std::function<uint32_t()> getSerializedSizeProvider(void* data) override {
        auto size = static_cast<uint32_t>(static_cast<Raw*>(data)->bytes.size());
        return [size]() { return size; };
    }
    void* createData() override { return new Raw(); }
    void deleteData(void* data) override { delete static_cast<Raw*>(data); }
    bool getKey(void*, InstanceHandle_t*, bool) override { return false; }
};

const char* type_name(const std::string& kind) {
    if (kind == "string") return "std_msgs::msg::dds_::String_";
    if (kind == "imu") return "sensor_msgs::msg::dds_::Imu_";
    if (kind == "navsatfix") return "sensor_msgs::msg::dds_::NavSatFix_";
    if (kind == "pointcloud2") return "sensor_msgs::msg::dds_::PointCloud2_";
    std::fprintf(stderr, "fastpub: unknown --type %s\n", kind.c_str());
    std::exit(2);
}

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "fastpub: %s\nusage: fastpub --topic /name --type string|imu|navsatfix|pointcloud2 --count N "
                 "[--rate R] [--start S] [--size BYTES] [--depth D] [--linger SECONDS] [--tail N]\n",
                 why);
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    std::string topic, kind;
    long long count = -1, start = 0, tail = 0;
    double rate = 0, linger = 1.0;
    size_t size = 100;
    int depth = 10;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (i + 1 >= argc) usage(("no value after " + arg).c_str());
        const char* value = argv[++i];
        if (arg == "--topic") topic = value;
        else if (arg == "--type") kind = value;
        else if (arg == "--count") count = std::atoll(value);
        else if (arg == "--start") start = std::atoll(value);
        else if (arg == "--rate") rate = std::atof(value);
        else if (arg == "--size") size = static_cast<size_t>(std::atoll(value));
        else if (arg == "--depth") depth = std::atoi(value);
        else if (arg == "--linger") linger = std::atof(value);
        else if (arg == "--tail") tail = std::atoll(value);
        else usage(("unknown argument " + arg).c_str());
    }
    if (topic.empty() || topic[0] != '/' || kind.empty() || count < 0 || tail < 0 || depth < 1) usage("--topic, --type and --count are needed");

    size_t largest = make(kind, start + count + tail, size).size() + 64;
    TypeSupport type(new RawType(type_name(kind), static_cast<uint32_t>(largest)));
    DomainParticipant* participant = DomainParticipantFactory::get_instance()->create_participant(0, PARTICIPANT_QOS_DEFAULT);
    if (!participant) usage("cannot create the participant");
    type.register_type(participant);
    Topic* dds_topic = participant->create_topic("rt" + topic, type.get_type_name(), TOPIC_QOS_DEFAULT);
    Publisher* publisher = participant->create_publisher(PUBLISHER_QOS_DEFAULT);
    DataWriterQos qos = DATAWRITER_QOS_DEFAULT;
    qos.reliability().kind = RELIABLE_RELIABILITY_QOS;
    qos.reliability().max_blocking_time = eprosima::fastrtps::Duration_t(1, 0);
    qos.durability().kind = VOLATILE_DURABILITY_QOS;
    qos.history().kind = KEEP_LAST_HISTORY_QOS;
    qos.history().depth = depth;
    // ROS 2 (rmw_fastrtps) lets the history grow its buffers rather than preallocate them.
    qos.endpoint().history_memory_policy = eprosima::fastrtps::rtps::PREALLOCATED_WITH_REALLOC_MEMORY_MODE;
    DataWriter* writer = publisher ? publisher->create_datawriter(dds_topic, qos) : nullptr;
    if (!dds_topic || !writer) usage("cannot create the topic or its writer");

    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    PublicationMatchedStatus matched;
    while (writer->get_publication_matched_status(matched) == ReturnCode_t::RETCODE_OK && matched.current_count < 1) {
        if (std::chrono::steady_clock::now() > deadline) {
            std::fprintf(stderr, "fastpub: no subscriber on %s after 30 s\n", topic.c_str());
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the reader's reliable state settles

    auto begin = std::chrono::steady_clock::now();
    long long refused = 0;
    Raw sample;
    for (long long i = 0; i < count; i++) {
        sample.bytes = make(kind, start + i, size);
        if (!writer->write(&sample)) refused++;
        if (rate > 0) {
            auto due = begin + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                   std::chrono::duration<double>(static_cast<double>(i + 1) / rate));
            std::this_thread::sleep_until(due);
        }
    }
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    for (long long i = 0; i < tail; i++) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        sample.bytes = make(kind, start + count + i, size);
        if (!writer->write(&sample)) refused++;
    }
    std::fprintf(stderr, "fastpub: %lld %s on %s in %.2f s%s\n", count + tail, kind.c_str(), topic.c_str(), elapsed,
                 refused ? (", " + std::to_string(refused) + " refused by the writer").c_str() : "");
    writer->wait_for_acknowledgments(eprosima::fastrtps::Duration_t(static_cast<int32_t>(linger + 1), 0));
    std::this_thread::sleep_for(std::chrono::duration<double>(linger));
    participant->delete_contained_entities();
    DomainParticipantFactory::get_instance()->delete_participant(participant);
    return refused ? 1 : 0;
}
